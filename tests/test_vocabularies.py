"""Every option vocabulary is defined once, in icrm_kernels/vocab.py (ordered tuples of accepted
strings; code = position; named constants V.<KIND>_<VALUE>). Everything else must read it: the
C++ enums (csrc/advantages.cpp), the C++ special-function selector and ELBO reduction
(csrc/beta.cpp), the code tables of the Python launchers (ops/*.py for the C++ ops,
triton/*.py for the kernels), the reference's accepted values and the validation."""
import pathlib
import re

import pytest

import icrm_kernels.vocab as V
from icrm_kernels.nn import beta as nn_beta
from icrm_kernels.ops import advantages as ops_adv
from icrm_kernels.ops import beta as ops_beta
from icrm_kernels.reference import advantages as ref
from icrm_kernels.triton import advantages as tri_adv
from icrm_kernels.triton import special as tri_special

ROOT = pathlib.Path(__file__).resolve().parents[1]
# option kind -> (vocabulary, C++ enum name, the Triton launcher's table)
KINDS = {
    "baseline": (V.BASELINES, "Baseline", tri_adv.BASELINE),
    "scale": (V.SCALES, "Scale", tri_adv.SCALE),
    "whiten": (V.WHITENS, "Whiten", tri_adv.WHITEN),
    "singleton": (V.SINGLETONS, "Singleton", tri_adv.SINGLETON),
    "whiten_std": (V.WHITEN_STDS, "WhitenStd", tri_adv.WHITEN_STD),
}


def _positions(vocab):
    return {name: i for i, name in enumerate(vocab)}


def _cpp_enums():
    text = (ROOT / "csrc" / "advantages.cpp").read_text()
    out = {}
    for name, body in re.findall(r"enum\s+(\w+)\s*:\s*int64_t\s*\{([^}]*)\}", text):
        out[name] = [(k.strip(), int(v)) for k, v in re.findall(r"(\w+)\s*=\s*(\d+)", body)]
    return out


# ------------------------------------------------------------------ vocab.py itself
@pytest.mark.parametrize("kind", list(V.VOCABULARIES))
def test_named_constants_are_positions(kind):
    """V.<PREFIX><VALUE> == position of value, for every value; no stray constant of the prefix."""
    vocab, prefix = V.VOCABULARIES[kind], V.CONSTANT_PREFIXES[kind]
    assert len(set(vocab)) == len(vocab), vocab
    want = {prefix + value.upper(): i for i, value in enumerate(vocab)}
    for name, code in want.items():
        assert getattr(V, name, None) == code, (name, code)
        assert type(getattr(V, name)) is int  # plain ints: Triton reads them as compile-time constants
    longer = [p for p in V.CONSTANT_PREFIXES.values() if p != prefix and p.startswith(prefix)]
    stray = {n for n in vars(V) if n.startswith(prefix) and isinstance(getattr(V, n), int)
             and not any(n.startswith(p) for p in longer)} - set(want)
    assert not stray, stray
    assert V.codes(vocab) == _positions(vocab)
    for i, value in enumerate(vocab):
        assert V.code(kind, value) == i
    with pytest.raises(ValueError, match=kind):
        V.code(kind, "no_such_value")


def test_every_vocabulary_has_a_prefix():
    assert set(V.CONSTANT_PREFIXES) == set(V.VOCABULARIES)


# ------------------------------------------------------------------ group_advantages
def test_reference_reads_the_vocabularies():
    assert ref.BASELINES is V.BASELINES
    assert ref.SCALES is V.SCALES
    assert ref.WHITENS is V.WHITENS
    assert ref.WHITEN_STDS is V.WHITEN_STDS
    assert ref.SINGLETONS is V.SINGLETONS
    assert ref.NAN_POLICIES is V.NAN_POLICIES
    assert ref.AGGREGATIONS is V.AGGREGATIONS


@pytest.mark.parametrize("kind", list(KINDS))
def test_codes_are_positions_in_the_vocabulary(kind):
    vocab, _, triton_table = KINDS[kind]
    want = _positions(vocab)
    assert ops_adv._CPP_CODES[kind] == want
    assert triton_table == want


@pytest.mark.parametrize("kind", list(KINDS))
def test_cpp_enum_matches_the_vocabulary(kind):
    vocab, enum_name, _ = KINDS[kind]
    enums = _cpp_enums()
    assert enum_name in enums, f"csrc/advantages.cpp has no enum {enum_name}"
    entries = enums[enum_name]
    assert [v for _, v in entries] == list(range(len(vocab))), entries
    prefix = V.CONSTANT_PREFIXES[kind]
    for (cpp_name, code), option in zip(entries, vocab):
        # kLeaveOneOut <-> "leave_one_out"; kBaseNone / kScaleNone <-> "none"
        assert cpp_name.lower().removeprefix("k").endswith(option.replace("_", "")), (cpp_name, option)
        assert getattr(V, prefix + option.upper()) == code, (cpp_name, option)


@pytest.mark.parametrize("kind", ["baseline", "scale", "whiten", "singleton", "nan_policy", "aggregation",
                                  "whiten_std"])
def test_validation_accepts_exactly_the_vocabulary(kind):
    base = dict(preset=None, baseline=None, scale=None, whiten=None, eps=None, std_unbiased=None, singleton=None,
                nan_policy=None, aggregation=None, bnpo_bounds=None, whiten_eps=None, whiten_std=None)
    for value in V.VOCABULARIES[kind]:
        opts = dict(base, **{kind: value})
        if value == "bnpo":
            opts["baseline"] = "group_mean"
        assert ops_adv._validated_options(*opts.values())[kind] == value
    with pytest.raises(ValueError, match=re.escape(str(list(V.VOCABULARIES[kind])))):
        ops_adv._validated_options(*dict(base, **{kind: "no_such_value"}).values())


# ------------------------------------------------------------------ special functions
def _cpp_special_selector():
    """{code: name} from csrc/beta.cpp: the range check's message and the dispatch expression."""
    text = (ROOT / "csrc" / "beta.cpp").read_text()
    body = re.search(r"at::Tensor special_unary\(.*?\n}\n", text, re.S)
    assert body, "csrc/beta.cpp has no special_unary"
    body = body.group(0)
    message = dict((int(c), n) for c, n in re.findall(r"(\d+) \((\w+)\)", body))
    dispatch = dict((int(c), n) for c, n in re.findall(r"which == (\d+) \? sp::(\w+)\(", body))
    default = re.search(r": sp::(\w+)\(v\);", body).group(1)
    limit = re.search(r"which >= 0 && which <= (\d+)", body).group(1)
    return message, dispatch, default, int(limit)


def test_special_selectors_match_the_vocabulary():
    want = _positions(V.SPECIAL_UNARY)
    assert tri_special.UNARY == want
    # the C++ adapters pass the named constants
    assert [V.UNARY_DIGAMMA, V.UNARY_TRIGAMMA, V.UNARY_LGAMMA] == [want["digamma"], want["trigamma"], want["lgamma"]]


def test_cpp_special_selector_matches_the_vocabulary():
    message, dispatch, default, limit = _cpp_special_selector()
    assert message == dict(enumerate(V.SPECIAL_UNARY))
    assert limit == len(V.SPECIAL_UNARY) - 1
    # which == 0 ? digamma : which == 1 ? trigamma : lgamma (the last code is the fallthrough)
    assert dispatch == dict(list(enumerate(V.SPECIAL_UNARY))[:-1])
    assert default == V.SPECIAL_UNARY[-1]


# ------------------------------------------------------------------ reductions, Beta statistics, heads
def test_reductions_match_the_vocabulary():
    assert ops_beta._REDUCTIONS == _positions(V.REDUCTIONS)


def test_cpp_elbo_reduction_matches_the_vocabulary():
    text = (ROOT / "csrc" / "beta.cpp").read_text()
    doc = re.search(r"// reduction: (.*)", text).group(1)
    assert dict((int(c), n) for c, n in re.findall(r"(\d+) (\w+) \(", doc)) == dict(enumerate(V.REDUCTIONS))
    assert f"reduction == {V.REDUCTION_NONE} ? n : 0" in text  # none: one loss per element
    assert f"if (reduction == {V.REDUCTION_MEAN}) total = n ? total / double(n)" in text  # mean: sum / n


def test_beta_statistics_match_the_vocabulary():
    assert ops_beta.BetaStats._fields == V.BETA_STATISTICS
    assert tuple(ops_beta.STATISTICS) == V.BETA_STATISTICS
    # the C++ kernel documents its [6, n] rows in this order
    text = (ROOT / "csrc" / "beta.cpp").read_text()
    assert "// out[6, n]: mean, var, E[log t], E[log(1-t)], E[logit t], entropy." in text
    assert len(V.BETA_STATISTICS) == 6


def test_head_outputs_match_the_vocabulary():
    assert tuple(nn_beta.OUTPUTS) == V.BETA_HEAD_OUTPUTS


# ------------------------------------------------------------------ kernels compare named constants
@pytest.mark.parametrize("module, params", [
    (tri_adv, ("BASELINE", "SCALE", "SINGLETON", "FORM", "b", "s", "wcode")),
    (tri_special, ("WHICH",)),
])
def test_kernels_compare_codes_with_named_constants(module, params):
    """No option code is compared with a bare integer literal in the kernels and their launchers."""
    text = pathlib.Path(module.__file__).read_text()
    bare = re.findall(rf"\b({'|'.join(params)})\s*[=!]=\s*\d", text)
    assert not bare, bare

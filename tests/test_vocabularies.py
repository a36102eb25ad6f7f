"""The option vocabularies of group_advantages are defined in icrm_kernels/reference/advantages.py
(BASELINES, SCALES, ...); the C++ enums (csrc/advantages.cpp) and the integer codes the Python
launchers pass (ops/advantages.py for the C++ op, triton/advantages.py for the kernels) must
encode them the same way: code = position in the vocabulary, enum names matching the options."""
import pathlib
import re

import pytest

from icrm_kernels.ops import advantages as ops_adv
from icrm_kernels.reference import advantages as ref
from icrm_kernels.triton import advantages as tri_adv

ROOT = pathlib.Path(__file__).resolve().parents[1]
# option kind -> (vocabulary, C++ enum name, the Triton launcher's table)
KINDS = {
    "baseline": (ref.BASELINES, "Baseline", tri_adv.BASELINE),
    "scale": (ref.SCALES, "Scale", tri_adv.SCALE),
    "whiten": (ref.WHITENS, "Whiten", tri_adv.WHITEN),
    "singleton": (ref.SINGLETONS, "Singleton", tri_adv.SINGLETON),
    "whiten_std": (ref.WHITEN_STDS, "WhitenStd", tri_adv.WHITEN_STD),
}


def _cpp_enums():
    text = (ROOT / "csrc" / "advantages.cpp").read_text()
    out = {}
    for name, body in re.findall(r"enum\s+(\w+)\s*:\s*int64_t\s*\{([^}]*)\}", text):
        out[name] = [(k.strip(), int(v)) for k, v in re.findall(r"(\w+)\s*=\s*(\d+)", body)]
    return out


@pytest.mark.parametrize("kind", list(KINDS))
def test_codes_are_positions_in_the_vocabulary(kind):
    vocab, _, triton_table = KINDS[kind]
    want = {name: i for i, name in enumerate(vocab)}
    assert ops_adv._CPP_CODES[kind] == want
    assert triton_table == want


@pytest.mark.parametrize("kind", list(KINDS))
def test_cpp_enum_matches_the_vocabulary(kind):
    vocab, enum_name, _ = KINDS[kind]
    enums = _cpp_enums()
    assert enum_name in enums, f"csrc/advantages.cpp has no enum {enum_name}"
    entries = enums[enum_name]
    assert [v for _, v in entries] == list(range(len(vocab))), entries
    for (cpp_name, _), option in zip(entries, vocab):
        # kLeaveOneOut <-> "leave_one_out"; kBaseNone / kScaleNone <-> "none"
        assert cpp_name.lower().removeprefix("k").endswith(option.replace("_", "")), (cpp_name, option)

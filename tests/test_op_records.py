"""The op table (icrm_kernels/_op.py): every op is one record, and each record is consistent."""
import inspect

import pytest
import torch

import icrm_kernels  # noqa: F401  (defines every op)
from icrm_kernels import _op


def _schema_args(schema: str) -> int:
    inside = schema[schema.index("(") + 1: schema.index(")")]
    return len([a for a in inside.split(",") if a.strip()])


def test_every_record_belongs_to_a_listed_family():
    assert _op.OPS, "no op defined"
    families = {op.record.family for op in _op.OPS.values()}
    assert families == set(_op.FAMILIES), (families, _op.FAMILIES)


@pytest.mark.parametrize("name", sorted(_op.OPS))
def test_record_is_consistent(name):
    op = _op.OPS[name]
    rec = op.record
    assert rec.name == name and callable(rec.reference) and callable(rec.fake)
    assert hasattr(torch.ops.icrm, name), f"torch.ops.icrm.{name} is not registered"
    assert (rec.backward is None) == (rec.setup_context is None)
    if rec.cpp is not None:
        assert rec.cpp_op, "a C++ implementation names the icrm_cpu kernel it needs"
    n = _schema_args(rec.schema)
    outs = rec.schema.split("->")[1].strip()
    n_out = len(outs.strip("()").split(",")) if outs.startswith("(") else 1
    if rec.backward is not None:
        # the eager twin passes the first m arguments to Function.apply: m is stated and in range
        assert rec.differentiable is not None and 1 <= rec.differentiable <= n
    if rec.eager_outputs is not None:
        assert 1 <= rec.eager_outputs < n_out and rec.backward is not None
    for impl in (rec.triton, rec.cpp, rec.reference, rec.fake):
        if impl is None:
            continue
        params = inspect.signature(impl).parameters.values()
        if any(p.kind == p.VAR_POSITIONAL for p in params):
            continue  # (the flat-options adapters of group_advantages take *options)
        # callable with exactly the op's arguments (extra parameters only with defaults)
        required = [p for p in params if p.default is p.empty]
        assert len(required) == n <= len(params), \
            f"{getattr(impl, '__name__', impl)} takes {len(required)}-{len(params)} arguments, the schema {n}"


def test_an_op_is_defined_once():
    rec = next(iter(_op.OPS.values())).record
    with pytest.raises(RuntimeError, match="defined twice"):
        _op.define(rec)


def test_backend_choice_follows_use_backend():
    x = torch.rand(4, dtype=torch.float32) + 0.5
    op = _op.OPS["digamma"]
    with icrm_kernels.use_backend("reference"):
        assert op.backend(x) == "reference"
    # float64 never takes a Triton kernel that computes in fp32
    assert op.backend(x.double()) in ("cpp", "reference")

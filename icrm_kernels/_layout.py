"""Group / segment layouts shared by the grouped-normalization and Beta-posterior families.

Rows of a batch are grouped in one of three layouts, exactly one given:

- ``group_size=G``: contiguous groups of G rows (N = B·G; TRL's layout).
- ``cu_groups[B+1]``: contiguous ragged offsets, int32/int64 (flash-attn's ``cu_seqlens``
  convention): group b is rows ``cu[b]:cu[b+1]``.
- ``group_index[N]``: any integer id per row, not sorted (verl's ``uid`` layout).

:func:`resolve_groups` validates the arguments and returns a :class:`GroupLayout`. Kernels only
need two forms: *fixed* (G known) and *ragged* (``cu`` offsets). The index layout becomes
ragged without a host synchronisation: a stable sort gives ``order`` (sorted position ->
original row), and ``cu`` is built with ``max_groups = N`` entries, where groups past the real
count are empty (``cu[b] = cu[b+1] = N``); kernels launched over ``max_groups`` groups find those
empty and do nothing. ``num_groups`` is then a 0-d device tensor.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Union

import torch

from icrm_kernels._checks import check_index, check_offsets, check_positive_int


@dataclasses.dataclass
class GroupLayout:
    kind: str  # "fixed", "ragged" or "index"
    n: int  # rows
    device: torch.device
    max_groups: int  # groups to launch over (exact for fixed/ragged, N for index)
    group_size: Optional[int] = None  # fixed only
    cu: Optional[torch.Tensor] = None  # int64 [max_groups + 1] offsets (ragged, index)
    order: Optional[torch.Tensor] = None  # int64 [N]: sorted position -> original row (index)
    num_groups: Union[int, torch.Tensor, None] = None  # int, or 0-d int64 device tensor (index)

    def group_of_row(self) -> torch.Tensor:
        """int64 [N]: the group number (0..num_groups-1) of each original row."""
        if self.kind == "fixed":
            return torch.arange(self.n, device=self.device) // self.group_size
        sorted_group = sorted_group_of_position(self.cu, self.n)
        if self.kind == "ragged":
            return sorted_group
        out = torch.empty_like(sorted_group)
        out[self.order] = sorted_group
        return out


def kernel_args(layout: GroupLayout):
    """(cu or None, order or None, group_size or 0): what the kernels take."""
    if layout.kind == "fixed":
        return None, None, layout.group_size
    return layout.cu, layout.order, 0


def layout_of_kernel_args(n: int, device, cu: Optional[torch.Tensor], order: Optional[torch.Tensor],
                          group_size: int) -> GroupLayout:
    """The inverse of :func:`kernel_args`."""
    if cu is None:
        return GroupLayout("fixed", n, device, n // group_size if group_size else 0, group_size=group_size)
    kind = "ragged" if order is None else "index"
    return GroupLayout(kind, n, device, cu.numel() - 1, cu=cu, order=order)


def num_groups_of_kernel_args(n: int, cu: Optional[torch.Tensor], group_size: int) -> int:
    return (n // group_size if group_size else 0) if cu is None else cu.numel() - 1


def sanitize_offsets(cu: torch.Tensor, n: int) -> torch.Tensor:
    """Contiguous int64 offsets with cu'[i] = max(cu'[i-1], clamp(cu[i], 0, n)). The identity on
    valid offsets; on malformed ones (value checks off: unchecked(), torch.compile, the direct
    launchers) it keeps every group or sequence inside the rows, so garbage offsets give garbage
    values, not a crash. The one rule for cu_groups, cu_segments and cu_seqlens (the C++ kernels
    apply the same)."""
    if cu.dim() != 1:
        cu = cu.reshape(-1)
    if cu.dtype != torch.int64:  # (each skipped no-op call saves ~1 µs of host time)
        cu = cu.to(torch.int64)
    cu = cu.clamp(0, max(int(n), 0))
    if cu.numel() > 1:
        cu = torch.cummax(cu, 0).values
    return cu if cu.is_contiguous() else cu.contiguous()


def sorted_group_of_position(cu: torch.Tensor, n: int) -> torch.Tensor:
    """int64 [n]: the group of each (sorted) position under offsets ``cu``, always in
    [0, max(B-1, 0)]. searchsorted instead of repeat_interleave(output_size=n): the latter trusts
    sum(sizes) == n, which malformed offsets break."""
    cu = sanitize_offsets(cu, n)
    b = cu.numel() - 1
    pos = torch.arange(n, device=cu.device)
    if b <= 0:
        return torch.zeros(n, dtype=torch.int64, device=cu.device)
    return torch.searchsorted(cu[1:].contiguous(), pos, right=True).clamp_(max=b - 1)


def sort_index(index: torch.Tensor, n: int):
    """Stable sort of ids -> (order, cu[n+1], num_groups as 0-d tensor); no host sync."""
    device = index.device
    sorted_ids, order = torch.sort(index, stable=True)
    if n == 0:
        return order, torch.zeros(1, dtype=torch.int64, device=device), torch.zeros((), dtype=torch.int64, device=device)
    starts = torch.ones(n, dtype=torch.bool, device=device)
    starts[1:] = sorted_ids[1:] != sorted_ids[:-1]
    group = torch.cumsum(starts.to(torch.int64), 0) - 1  # dense group number of each sorted row
    cu = torch.full((n + 1,), n, dtype=torch.int64, device=device)
    cu.scatter_reduce_(0, group, torch.arange(n, device=device), reduce="amin", include_self=True)
    return order, cu, group[-1] + 1


def segments_of_index(index: torch.Tensor, k: int):
    """Stable order by segment id (order of appearance kept) and offsets cu[K+1]; no host sync.
    Ids outside [0, K) go to a trailing bucket that no segment reads."""
    idx = index.to(torch.int64)
    idx = torch.where((idx >= 0) & (idx < k), idx, torch.full_like(idx, k))
    order = torch.sort(idx, stable=True).indices
    counts = torch.zeros(k + 1, dtype=torch.int64, device=idx.device).index_add_(0, idx, torch.ones_like(idx))
    cu = torch.zeros(k + 1, dtype=torch.int64, device=idx.device)
    cu[1:] = torch.cumsum(counts[:k], 0)
    return order, cu


def check_groups(
    n: int,
    device: torch.device,
    *,
    group_size=None,
    cu_groups=None,
    group_index=None,
    names=("group_size", "cu_groups", "group_index"),
    rows: str = "rewards",
) -> str:
    """Validate the three mutually exclusive layout arguments; returns "fixed", "ragged" or "index"."""
    given = [name for name, v in zip(names, (group_size, cu_groups, group_index)) if v is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of {', '.join(names)}; got {', '.join(given) if given else 'none'}")
    if group_size is not None:
        check_positive_int(group_size, names[0])
        if n % group_size != 0:
            raise ValueError(f"{names[0]}={group_size} must divide the number of rows of {rows} ({n})")
        return "fixed"
    if cu_groups is not None:
        if isinstance(cu_groups, torch.Tensor) and cu_groups.device != device:  # before reading values
            raise ValueError(f"{names[1]} is on {cu_groups.device} but the rows are on {device}")
        check_offsets(cu_groups, names[1], n)
        return "ragged"
    check_index(group_index, names[2], n)
    if group_index.device != device:
        raise ValueError(f"{names[2]} is on {group_index.device} but the rows are on {device}")
    return "index"


def resolve_groups(
    n: int,
    device: torch.device,
    *,
    group_size=None,
    cu_groups=None,
    group_index=None,
    names=("group_size", "cu_groups", "group_index"),
    rows: str = "rewards",
) -> GroupLayout:
    """Validate the three mutually exclusive layout arguments (:func:`check_groups`); return the
    canonical layout."""
    kind = check_groups(n, device, group_size=group_size, cu_groups=cu_groups, group_index=group_index, names=names,
                        rows=rows)
    if kind == "fixed":
        return GroupLayout("fixed", n, device, n // group_size, group_size=group_size, num_groups=n // group_size)
    if kind == "ragged":
        b = cu_groups.numel() - 1
        return GroupLayout("ragged", n, device, b, cu=sanitize_offsets(cu_groups, n), num_groups=b)
    order, cu, num = sort_index(group_index, n)
    return GroupLayout("index", n, device, n, cu=cu, order=order, num_groups=num)

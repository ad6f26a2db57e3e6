"""Best-fit-decreasing packing of examples into rows of at most `capacity` tokens.

Examples are taken longest first; each goes into the open row with the least room that still
fits it (a segment tree over "rows with r tokens free" finds that row in O(log capacity)), or
opens a new row. The result is deterministic for the same sizes.
"""

from __future__ import annotations

from collections import defaultdict, deque


class _FreeSpaceTree:
    """Counts of open rows per amount of free space, with 'smallest free space >= s' queries."""

    def __init__(self, capacity: int) -> None:
        self.size = 1
        while self.size < capacity + 1:
            self.size *= 2
        self.count = [0] * (2 * self.size)

    def add(self, space: int, delta: int) -> None:
        i = space + self.size
        while i:
            self.count[i] += delta
            i //= 2

    def smallest_at_least(self, space: int) -> int | None:
        """The smallest free space >= `space` that some open row has, or None."""
        return self._search(1, 0, self.size - 1, space)

    def _search(self, node: int, lo: int, hi: int, space: int) -> int | None:
        if hi < space or self.count[node] == 0:
            return None
        if lo == hi:
            return lo
        mid = (lo + hi) // 2
        found = self._search(2 * node, lo, mid, space)
        return found if found is not None else self._search(2 * node + 1, mid + 1, hi, space)


def best_fit_decreasing(sizes: list[int], capacity: int) -> list[list[int]]:
    """Group item indices into rows whose sizes sum to at most `capacity` (each size <= capacity)."""
    if any(s > capacity or s <= 0 for s in sizes):
        raise ValueError(f"every size must be in [1, {capacity}]")
    order = sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))
    tree = _FreeSpaceTree(capacity)
    rows_with_space: dict[int, deque[int]] = defaultdict(deque)
    rows: list[list[int]] = []
    free: list[int] = []
    for item in order:
        space = tree.smallest_at_least(sizes[item])
        if space is None:
            rows.append([])
            free.append(capacity)
            row = len(rows) - 1
        else:
            row = rows_with_space[space].popleft()
            tree.add(space, -1)
        rows[row].append(item)
        free[row] -= sizes[item]
        if free[row] > 0:
            rows_with_space[free[row]].append(row)
            tree.add(free[row], 1)
    return rows

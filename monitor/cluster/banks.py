"""Banks in the Ray object store: put once by the engine, read by every actor without copying the codes.

`publish` puts each loaded bank's codes (a numpy array) and entries into the object store once; actors on one
node map the same shared-memory copy (numpy arrays come back read-only, without a copy) and build their index on
it (`fetch_banks`). A reload publishes new references and hands them to every actor; the old objects are freed
by Ray once no actor holds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from pipelines.banks import Bank, Entry

if TYPE_CHECKING:
    from ray import ObjectRef


@dataclass(frozen=True, slots=True)
class BankData:
    """A bank as plain data: what crosses the object store."""

    name: str
    signal_type: str
    threshold: int
    codes: npt.NDArray[np.uint8]
    entries: tuple[Entry, ...]

    @classmethod
    def of(cls, bank: Bank) -> BankData:
        return cls(bank.name, bank.signal_type, bank.threshold, np.ascontiguousarray(bank.codes, dtype=np.uint8),
                   tuple(bank.entries))

    def bank(self) -> Bank:
        # Bank keeps a contiguous uint8 array as it is: the read-only object-store buffer is not copied
        return Bank(self.name, self.signal_type, self.codes, list(self.entries), self.threshold)


def publish(banks: Sequence[Bank]) -> list[ObjectRef[BankData]]:
    """One object-store reference per bank (ray.put once, here in the engine's process)."""
    import ray

    return [ray.put(BankData.of(b)) for b in banks]


def fetch_banks(refs: Sequence[ObjectRef[BankData]]) -> list[Bank]:
    """The banks behind `refs`, read from this node's object store."""
    if not refs:
        return []
    import ray

    return [d.bank() for d in ray.get(list(refs))]

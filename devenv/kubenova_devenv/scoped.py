"""What every test-bed piece (a control plane stack, a node, a network lab, a probe) does as a
context manager: ``start()`` on entering, ``stop()`` on leaving, and a start that fails part
way stopped (what it had started is undone) before the error goes on."""

from __future__ import annotations

from typing import Self


class Scoped:
    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""A writer process for the crash tests: appends forever, acknowledging each append.

Run as ``python _children_writer.py STORE NAME BATCH``.  After each ``append``
returns it prints the total number of rows acknowledged so far, so the parent
knows which rows must survive when it kills this process.  Row ``i`` holds
``i * WIDTH + arange(WIDTH)``, so any row can be checked on its own.

With BATCH ``overwrite`` it rewrites NAME again and again instead, as
``generation(g)`` for g = 1, 2, ..., and writes and deletes a dataset
"scratch", printing g after each round returned.

With BATCH ``migrate`` it writes NAME once (``generation(1)``), which
migrates a store of metadata format 1 first, and prints ``1``.
"""

from __future__ import annotations

import sys

import numpy as np

import shmstore

WIDTH = 5


def expected_rows(start: int, stop: int) -> np.ndarray:
    """The rows ``[start, stop)`` the writer appends."""
    return np.arange(start * WIDTH, stop * WIDTH, dtype="<i8").reshape(-1, WIDTH)


def generation(g: int) -> np.ndarray:
    """The array the overwriting writer stores at its generation *g*: g + 1 rows all equal g."""
    return np.full((g + 1, WIDTH), g, dtype="<i8")


def overwrite(path: str, name: str) -> None:
    with shmstore.open(path, "a") as store:
        g = int(store.read(name)[0, 0]) if name in store else 0
        print(f"ready {g}", flush=True)
        while True:
            g += 1
            store.write(name, generation(g), overwrite=True, appendable=g % 2 == 0)
            store.write("scratch", generation(g), overwrite=True)
            store.delete("scratch")
            print(g, flush=True)


def main() -> None:
    path, name = sys.argv[1], sys.argv[2]
    if sys.argv[3] == "overwrite":
        overwrite(path, name)
        return
    if sys.argv[3] == "migrate":
        with shmstore.open(path, "a") as store:
            print("ready 0", flush=True)
            store.write(name, generation(1))
            print(1, flush=True)
        return
    batch = int(sys.argv[3])
    with shmstore.open(path, "a") as store:
        total = store.info(name).rows if name in store else 0
        print(f"ready {total}", flush=True)
        while True:
            store.append(name, expected_rows(total, total + batch))
            total += batch
            print(total, flush=True)


if __name__ == "__main__":
    main()

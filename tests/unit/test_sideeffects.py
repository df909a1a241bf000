"""sideeffects: check 5's watches of a materialised call, and one wording of a change."""

from __future__ import annotations

from kapi_selftests.link import calltable
from kapi_selftests.oracle.sideeffects import Watch, judge, watches
from kapi_selftests.plan import Buf, BufKind, CallPlan, Fd, FdKind, Lit, Path, PathKind
from kapi_selftests.records import Materialized

U = (-1, -1, -1, -1)
TABLE = Watch(calltable.WATCH_FD_TABLE, 0, 0, -1)


def test_watches_follow_the_arguments_then_the_fd_table() -> None:
    plan = CallPlan("read", (Fd(FdKind.REGULAR), Buf(BufKind.MAPPED, 1 << 20), Lit(1 << 20)))
    m = Materialized(plan, (7, 0x1000, 1 << 20), fds={0: 7}, bufs={1: (0x1000, 1 << 20)})
    assert watches(m, lambda a, n: True) == [
        Watch(calltable.WATCH_FD, 7, 0, 0),
        Watch(calltable.WATCH_BUF, 0x1000, calltable.HASH_LIMIT, 1),
        TABLE]
    assert watches(m, lambda a, n: False) == [Watch(calltable.WATCH_FD, 7, 0, 0), TABLE]
    plan = CallPlan("open", (Path(PathKind.EMPTY), Lit(0), Lit(0)))
    m = Materialized(plan, (0x2000, 0, 0), paths={0: b""})  # an empty path: nothing to stat
    assert watches(m, lambda a, n: True) == [TABLE]


def test_judge_words_each_change_once() -> None:
    fd = Watch(calltable.WATCH_FD, 7, 0, 0)
    path = Watch(calltable.WATCH_PATH, 0x2000, 0, 1)
    assert judge([fd, path, TABLE], [(1, 0, 9, 5, -1), (0, *U), (4, *U)],
                 [(1, 0, 9, 5, -1), (0, *U), (4, *U)]) == []
    # closed: its offset and size go with it, one line for the fd table
    assert judge([fd], [(1, 0, 9, 5, -1)], [(0, *U)]) == [
        "fd table changed: opened [], closed [7]"]
    assert judge([fd, path, TABLE], [(1, 0, 9, 5, 3), (0, *U), (4, *U)],
                 [(1, 0, 9, 6, 0), (1, -1, 0, 1, -1), (5, *U)]) == [
        "fd table changed: opened [4], closed []", "arg0: file changed (contents)",
        "arg0: readable bytes 3 -> 0", "arg1: file created"]


def test_judge_ignores_the_fds_other_calls_of_the_window_took() -> None:
    # the suite's engine measures around a batch: an fd another call opened is not this
    # call's, and this call's own new fd then cannot be told
    assert judge([TABLE], [(4, *U)], [(5, *U)], ignore_fds=frozenset({4})) == []
    fd = Watch(calltable.WATCH_FD, 7, 0, 0)
    assert judge([fd], [(1, 0, 9, 5, -1)], [(0, *U)], ignore_fds=frozenset({7})) == []

"""``kapi-selftests replay REPRO``: re-run a saved reproducer; say 'fixed' or 'still failing'.

``REPRO`` is a ``repro.json`` written by ``fuzz`` (or its directory). Without
``--kernel`` it runs here (root, tracefs); with ``--kernel PATH`` it boots a
guest that runs it, and a kernel crash in the guest counts as still failing.
Exit codes: 0 fixed, 1 still failing, 2 usage, 4 cannot run here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from kapi_selftests.cmd.argtypes import add_accel, existing_path
from kapi_selftests.errors import KSFT_FAIL, KSFT_PASS, KapiError, LostGuest, MissingFeature

log = logging.getLogger(__name__)

_GUEST_ENTRY = ("import sys; from kapi_selftests.cmd.replay import guest_main; "
                "sys.exit(guest_main(sys.argv[1:]))")




def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("repro", type=existing_path, metavar="REPRO",
                   help="repro.json written by kapi-selftests fuzz (or its directory)")
    p.add_argument("--kernel", type=existing_path, metavar="PATH",
                   help="replay in a QEMU guest booting this kernel (default: here)")
    p.add_argument("--modules", type=existing_path, metavar="DIR",
                   help="modules of a modular kernel")
    add_accel(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    # loaded when the subcommand runs: the CLI imports every subcommand at start
    from kapi_selftests.fuzz import repro

    r = repro.load(args.repro)
    if args.kernel is not None:
        failing, explain = _replay_kernel(args, r)
    else:
        failing, explain = _replay_local(args.repro, r)
    verdict = "still failing" if failing else "fixed"
    if args.result is not None:
        args.result.write_text(json.dumps({"failing": failing, "explain": explain}) + "\n")
    if args.json:
        print(json.dumps({"repro": str(args.repro), "key": r.key.to_json(),
                          "verdict": verdict, "explain": explain}, indent=1))
    else:
        print(f"{r.key.describe()}: {verdict}")
        if failing:
            print(explain)
    return KSFT_FAIL if failing else KSFT_PASS


def _replay_local(path: Path, r: object) -> tuple[bool, str]:
    # loaded when the subcommand runs: the CLI imports every subcommand at start
    from kapi_selftests.fuzz.campaign import replay_plans
    from kapi_selftests.fuzz.repro import Reproducer
    from kapi_selftests.guest.tracefs import find_tracefs, missing_kapi_events, missing_tracefs
    from kapi_selftests.records import EventSource

    assert isinstance(r, Reproducer)
    if json.loads((path / "repro.json" if path.is_dir() else path).read_text()).get("crash"):
        raise MissingFeature("this reproducer crashed a kernel: replay it only in a guest",
                             hint=f"kapi-selftests replay {path} --kernel PATH")
    reason = missing_tracefs(find_tracefs())
    source = EventSource(r.source)
    if reason is None and source is EventSource.KAPI:
        reason = missing_kapi_events(find_tracefs())
    if reason:
        raise MissingFeature(reason)
    return replay_plans(r.plans, r.key, source, engine=r.engine)


def _replay_kernel(args: argparse.Namespace, r: object) -> tuple[bool, str]:
    # host side: the CLI imports every subcommand at start, in the guest too
    from kapi_selftests.host import kernel, qemu, runner
    from kapi_selftests.host.initramfs import GUEST_OUT

    kimg = kernel.find_kernel(args.kernel, args.modules)
    work = Path(tempfile.mkdtemp(prefix="kapi-replay-"))
    src = args.repro / "repro.json" if args.repro.is_dir() else args.repro
    shutil.copy(src, work / "repro.json")
    crash = bool(json.loads(src.read_text()).get("crash"))
    argv = (sys.executable, "-S", "-c", _GUEST_ENTRY, f"{GUEST_OUT}/repro.json",
            "--result", f"{GUEST_OUT}/result.json")
    cfg = dataclasses.replace(qemu.config_from_env(qemu.GuestConfig(kernel=kimg.image)),
                              out_dir=work, cpus=1, accel=qemu.Accel(args.accel))
    cfg, qargv = runner.prepare(kimg, cfg, runner.GuestSpec(argv=argv, env=runner.guest_env()))
    run = runner.boot(cfg, qargv)
    if run.splats:
        return True, f"kernel crash: {run.splats[0].summary}\n" + "\n".join(run.splats[0].excerpt)
    if run.killed:
        return True, f"guest hung: {run.killed} (console {run.console})"
    try:
        res = json.loads((work / "result.json").read_text())
    except (OSError, ValueError):
        if crash and run.status is not None:
            return False, "the guest ran the crashing batch and survived"
        raise LostGuest(f"the guest wrote no replay result (status {run.status}); "
                        f"console {run.console}") from None
    if not res["failing"]:
        shutil.rmtree(work, ignore_errors=True)  # kept (console, result) while it fails
    return bool(res["failing"]), str(res["explain"])


def guest_main(argv: Sequence[str]) -> int:
    """``replay`` in the guest (runs the plans even for crash reproducers: that is the point)."""
    p = argparse.ArgumentParser(prog="kapi-selftests replay")
    add_arguments(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        # loaded when the subcommand runs: the CLI imports every subcommand at start
        from kapi_selftests.fuzz import repro
        from kapi_selftests.fuzz.campaign import replay_plans
        from kapi_selftests.records import EventSource

        r = repro.load(args.repro)
        failing, explain = replay_plans(r.plans, r.key, EventSource(r.source)
                                        if r.source in ("kapi", "syscalls") else None,
                                        engine=r.engine)
        if args.result is not None:
            args.result.write_text(json.dumps({"failing": failing, "explain": explain}) + "\n")
        return KSFT_FAIL if failing else KSFT_PASS
    except KapiError as e:
        print(f"kapi-selftests: error: {e}", file=sys.stderr)
        return e.exit_code

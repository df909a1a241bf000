"""The regression gate: compare a base and a patched kernel, one verdict.

Stages, each its own module (host orchestration lives in
:mod:`kapi_selftests.host.gate_run`):

* :mod:`~kapi_selftests.gate.record` -- what one kernel's run left on disk
  (suite results, guest health, debugfs specs, tracepoint formats, per-call
  behaviour records, timings) loaded as a :class:`~kapi_selftests.gate.record.KernelRun`;
* :mod:`~kapi_selftests.oracle.specdiff` (in the oracle: the reference specs use it
  too) -- the readable diff of two kernels' specs;
* :mod:`~kapi_selftests.gate.compare` -- two runs in, a classified
  :class:`~kapi_selftests.gate.compare.GateVerdict` out (pure);
* :mod:`~kapi_selftests.gate.render` -- Markdown, JSON and JUnit of a verdict;
* :mod:`~kapi_selftests.gate.probe` -- the guest side: a fixed call mix issued
  through the harness, recorded as ``calls.jsonl``, and timed.

This package imports nothing on import, so the guest can load ``probe`` cheaply.
"""

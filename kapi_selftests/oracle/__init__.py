"""Oracle stage: what a KAPI kernel must do for a call, and the judge. Pure.

The spec model and its loaders (``spec``), the wrappers' C casts (``ctype``),
the prediction for one call (``predict``), each call's events by its time
window (``window``), the five checks over a decoded capture (``checks``, with
``bulk`` as the columnar fast path, and check 5's watches in ``sideeffects``),
the running kernel's specs against a reference set (``reference``,
``specdiff``), a saved capture's calls for the offline judge (``calls_log``), and
the upstream selftest's cases as data (``upstream_cases``). Imports neither the host nor the
guest side.
"""

"""Trace stage: what the kernel traced, decoded and grouped. Pure.

The records are ``events`` (``TraceEvent``, ``Capture``, ``RawCapture``); tracefs's
format files and header pages are read by ``formats``; ring-buffer pages become
events in ``ringbuf`` and text traces in ``text``; ``capture`` reads and writes
capture directories and loads a saved capture. Enter/exit events pair per thread
(``pairing``). Nothing here knows of the calls issued (that is the oracle's);
imports neither the host nor the guest side.
"""

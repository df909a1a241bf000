"""Trace stage: what the kernel traced, decoded and grouped. Pure.

Format files, ring-buffer pages and text traces become events (``events``);
enter/exit events pair per thread (``pairing``); events are assigned to the
call whose time window holds them (``window``); a saved capture's issued calls
are read back (``calls_log``). Imports neither the host nor the guest side.
"""

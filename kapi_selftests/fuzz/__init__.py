"""Generation stage: call plans generated, run as campaigns, and their findings.

The values where a validator turns (``edges``), generation of plans
(:mod:`kapi_selftests.plan`) for
the suite (``strategies``) and for campaigns (``generate``, ``callsafety``), the
campaign loop (``campaign``), shrinking (``minimize``), findings and their
reproducers (``findings``, ``repro``), spec and kernel coverage (``coverage``,
``kcov``), the campaign's files (``campaign_report``) and the host side of the
link to a guest's agent (``remote``; the link itself is :mod:`kapi_selftests.link`).
"""

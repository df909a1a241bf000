"""Generation stage: call plans, generated, run as campaigns, and their findings.

Plans (``plan``), the values where a validator turns (``edges``), generation for
the suite (``strategies``) and for campaigns (``generate``, ``callsafety``), the
campaign loop (``campaign``), shrinking (``minimize``), findings and their
reproducers (``findings``, ``repro``), spec and kernel coverage (``coverage``,
``kcov``), the campaign's files (``campaign_report``) and the host link to a
guest's agent (``remote``, ``shm``).
"""

"""ΔNLL@H evaluation of a GistNet checkpoint, one concept a module:

    conditions  scoring the teacher's horizon under each condition (full, gist, drop, ...)
    oracle      the free vectors fitted per example: the ceiling the gist is measured against
    stats       bootstrap intervals, the report's numbers, the quality bars
    request     EvalSettings / EvalRequest: what an evaluation is asked to do
    run         evaluate_gistnet: from a checkpoint and a prepared split to the report
    report      the table, the per-position plot and the JSON for people
    long        the long-document mode: a long context whole, truncated or compressed
"""

"""slimgraph.passes: the pass contract, pipelines, the pass manager and the rewrite driver.

    from slimgraph.passes import PassManager
    report = PassManager("canonicalize,cse,fold-constants,dce").run(graph)

Pass modules register themselves when `passes/registry.py` imports them (done lazily by
`get_pass`/`all_passes`/`parse_pipeline`).
"""
from .base import (PROPERTIES, Pass, PassContext, PassError, PassResult, all_passes, get_pass,
                   register_pass, register_property)
from .manager import NumericsError, PassManager, PassRecord, PipelineReport, run_pipeline
from .pipeline import format_pipeline, parse_pipeline
from .rewrite import C, P, RewriteError, RewriteEvent, Rule, RuleSet, apply_rules, const_value

__all__ = ["Pass", "PassResult", "PassError", "PassContext", "register_pass", "get_pass", "all_passes",
           "register_property", "PROPERTIES",
           "PassManager", "PipelineReport", "PassRecord", "NumericsError", "run_pipeline",
           "parse_pipeline", "format_pipeline",
           "P", "C", "Rule", "RuleSet", "RewriteError", "RewriteEvent", "apply_rules", "const_value"]

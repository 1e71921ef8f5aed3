"""slimgraph.passes: the pass contract, pipelines, the pass manager and the rewrite driver.

    from slimgraph.passes import PassManager
    report = PassManager("canonicalize,cse,fold-constants,dce").run(graph)

Pass modules register themselves when `passes/registry.py` imports them (done lazily by
`get_pass`/`all_passes`/`parse_pipeline`).
"""
from .base import Pass, PassError, PassResult, all_passes, get_pass, register_pass
from .manager import NumericsError, PassManager, PassRecord, PipelineReport, run_pipeline
from .pipeline import format_pipeline, parse_pipeline
from .rewrite import C, P, RewriteError, RewriteEvent, Rule, RuleSet, apply_rules, const_value

__all__ = ["Pass", "PassResult", "PassError", "register_pass", "get_pass", "all_passes",
           "PassManager", "PipelineReport", "PassRecord", "NumericsError", "run_pipeline",
           "parse_pipeline", "format_pipeline",
           "P", "C", "Rule", "RuleSet", "RewriteError", "RewriteEvent", "apply_rules", "const_value"]

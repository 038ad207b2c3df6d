"""Evaluation users can trust: suites -> generation (cached, sharded) -> judges -> metrics -> report (DESIGN §7).

from erasekit.evaluate import Study, evaluate, tinyworld_suites, make_judge, GenerationSettings, write_html, write_json
results = evaluate(pipe, [Study("circle", tinyworld_suites(["circle"]), {"uce": edit})], make_judge("tinyworld"),
                   out_dir="eval", settings=GenerationSettings(steps=20, guidance=5.0))
"""

from .attacks import ConceptVectorAttack, TokenSearchAttack, concept_set_pairs, concept_vector, tinyworld_pairs
from .judges import NUDENET_EXPOSED, CLIPJudge, Judge, JudgeResult, NudeNetJudge, TinyworldConceptJudge, make_judge
from .metrics import Estimate, attack_success_rate, bootstrap, erase_rate, harmonic_mean, judge_agreement, retain_rate
from .report import print_table, write_html, write_json
from .runner import GenerationSettings, ImageCache, Results, Study, evaluate, pipeline_fingerprint
from .suites import KINDS, Suite, SuiteItem, load_prompts, suites_from_concepts, tinyworld_suites

__all__ = [
    "KINDS",
    "Suite",
    "SuiteItem",
    "load_prompts",
    "suites_from_concepts",
    "tinyworld_suites",
    "Judge",
    "JudgeResult",
    "TinyworldConceptJudge",
    "NudeNetJudge",
    "CLIPJudge",
    "NUDENET_EXPOSED",
    "make_judge",
    "ConceptVectorAttack",
    "TokenSearchAttack",
    "concept_vector",
    "concept_set_pairs",
    "tinyworld_pairs",
    "Estimate",
    "bootstrap",
    "erase_rate",
    "retain_rate",
    "harmonic_mean",
    "attack_success_rate",
    "judge_agreement",
    "GenerationSettings",
    "ImageCache",
    "Results",
    "Study",
    "evaluate",
    "pipeline_fingerprint",
    "print_table",
    "write_html",
    "write_json",
]

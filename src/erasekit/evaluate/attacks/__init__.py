"""Attacks that try to bring an erased concept back (DESIGN §11): a registry, one module per attack.

Importing this package registers every built-in attack; ``erasekit attacks`` lists them with their kind, budgets and
reference. Each returns an ``adversarial`` :class:`~erasekit.evaluate.suites.Suite` (or a curve of them); the runner
generates it with the edited model (through the image cache) and the attack success rate is the share of attacked
prompts in which the judge sees the concept again, always beside the unedited model's rate and the attack's cost.
"""

from ..conditioning import (
    encode,
    pipe_kwargs,
    shift_embeddings,
    shifted_conditioning,
    token_conditioning,
    vector_digest,
)
from . import cce, mma, nbp, p4d, ring_a_bell, token_search, uda  # noqa: F401  (registration side effect)
from .base import (
    BUDGETS,
    KINDS,
    Attack,
    AttackConfig,
    AttackContext,
    AttackResult,
    BestOfPromptResult,
    Meter,
    PromptResult,
    SamplingResult,
    TokenResult,
    budget_field,
    check_budget_name,
    get_attack,
    list_attacks,
    make_attack_config,
    parse_attack_options,
    parse_attacks,
    register_attack,
)
from .ring_a_bell import (
    HEADLINE_RULE,
    ConceptVectorAttack,
    RingABellConfig,
    concept_set_pairs,
    concept_vector,
    eta_suite_name,
    headline_eta,
    parse_etas,
    tinyworld_pairs,
    tinyworld_prompt_attributes,
)
from .token_search import TokenSearchAttack, TokenSearchConfig, vocabulary_words

__all__ = [
    "BUDGETS",
    "HEADLINE_RULE",
    "KINDS",
    "Attack",
    "AttackConfig",
    "AttackContext",
    "AttackResult",
    "ConceptVectorAttack",
    "Meter",
    "BestOfPromptResult",
    "PromptResult",
    "RingABellConfig",
    "SamplingResult",
    "TokenResult",
    "TokenSearchAttack",
    "TokenSearchConfig",
    "budget_field",
    "check_budget_name",
    "concept_set_pairs",
    "concept_vector",
    "encode",
    "eta_suite_name",
    "get_attack",
    "headline_eta",
    "list_attacks",
    "make_attack_config",
    "parse_attack_options",
    "parse_attacks",
    "parse_etas",
    "pipe_kwargs",
    "register_attack",
    "shift_embeddings",
    "shifted_conditioning",
    "tinyworld_pairs",
    "tinyworld_prompt_attributes",
    "token_conditioning",
    "vector_digest",
    "vocabulary_words",
]

"""Formatting shared by the attack benchmarks (``attacks.py``, ``attack_budget.py``): an attack counted as the
reference protocols count it (:func:`erasekit.evaluate.summary.protocol_rates`), as plain numbers for the JSON and
as the three cells of a printed table row.

A cell is the conditional ASR over the items whose unattacked prompt the unedited model draws (the references attack
only such prompts; the unedited model's rate on their attacked prompts in brackets), UnlearnDiffAtk's count (the
unattacked prompt's success on the edit counts too) and P4D's (only the "ideal" items: drawn by the unedited model,
not by the edited one), each with its number of items; "–" where a rate is over no item (None).
"""

from __future__ import annotations

from typing import Any

# the counts protocol_rates adds beside its rates (erasekit.evaluate.summary.PROTOCOL_RATES)
PROTOCOL_ITEMS = ("conditional items", "P4D-protocol items")

PROTOCOL_NOTE = (
    "conditional ASR on the items the unedited model draws (unedited rate on their attacked prompts) [items]; "
    "UnlearnDiffAtk's count (the unattacked prompt's success counts) [items]; P4D's count on its ideal items "
    "(unedited draws, edited does not) [items]"
)
PROTOCOL_HEAD = "conditional ASR (unedited) [n] | UnlearnDiffAtk protocol [n] | P4D protocol (unedited) [n]"


def pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.0f} %"


def protocol_values(rates: dict[str, Any]) -> dict[str, float | int | None]:
    """The protocol rates (their values: an Estimate's point, None over no item) and item counts of ``rates``, a
    :func:`~erasekit.evaluate.summary.protocol_rates` result or an attack's row of the evaluation's summary; other
    keys are left out."""
    from erasekit.evaluate.summary import PROTOCOL_RATES

    return {
        k: (rates[k].value if hasattr(rates[k], "value") else rates[k])
        for k in (*PROTOCOL_RATES, *PROTOCOL_ITEMS)
        if k in rates
    }


def protocol_cells(c: dict[str, Any]) -> str:
    """The three cells of :data:`PROTOCOL_HEAD` from :func:`protocol_values`' keys ("–" for a missing one)."""
    n_cond, n_p4d = c.get("conditional items", "–"), c.get("P4D-protocol items", "–")
    return (
        f"{pct(c.get('conditional ASR'))} ({pct(c.get('conditional unedited rate'))}) [{n_cond}] | "
        f"{pct(c.get('UnlearnDiffAtk-protocol ASR'))} [{n_cond}] | "
        f"{pct(c.get('P4D-protocol ASR'))} ({pct(c.get('P4D-protocol unedited rate'))}) [{n_p4d}]"
    )

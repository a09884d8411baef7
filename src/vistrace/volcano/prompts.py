"""The Volcano prompts: feedback (F), revision (R) and decision (D), as the official code writes them.

Source: the Volcano repository's inference scripts (kaist-ai/volcano); the engineered variants are
the paper's prompt-engineering ablation.
"""

from __future__ import annotations

from dataclasses import dataclass

FEEDBACK_PROMPT = (
    "Generate the feedback given initial answer referring to question and image.\n"
    "Question: {question}\nInitial answer: {outputs}"
)
REVISION_PROMPT = (
    "Adjust the initial response considering the feedback and image.\n"
    "Question: {question}\nInitial answer: {outputs}\nFeedback: {feedback}"
)
DECISION_PROMPT = (
    "{question}\nA. {outputs}\nB. {revision}\n"
    "Answer with the option's letter from the given choices directly."
)

ENGINEERED_FEEDBACK_PROMPT = (
    "Question: {question}\nInitial response: {outputs}\nCritique the initial response given question "
    "and image. Please you should NOT use the term 'reference answer'!!!!!!!!!!"
)
ENGINEERED_REVISION_PROMPT = (
    "Adjust the initial response considering the feedback and image.\n"
    "Question: {question}\nInitial response: {outputs}\nFeedback: {feedback}"
)


@dataclass(frozen=True)
class VolcanoPrompts:
    """The feedback (F), revision (R) and decision (D) templates, filled with `str.format`."""

    feedback: str
    revision: str
    decision: str = DECISION_PROMPT


ORIGINAL_PROMPTS = VolcanoPrompts(FEEDBACK_PROMPT, REVISION_PROMPT)
ENGINEERED_PROMPTS = VolcanoPrompts(ENGINEERED_FEEDBACK_PROMPT, ENGINEERED_REVISION_PROMPT)

"""The JSON bodies of the service's endpoints (pydantic models, so ``/openapi.json``
documents every field): requests forbid unknown fields and non-finite numbers; responses
carry null where a number is undefined (never NaN or infinity)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator


class Body(BaseModel):
    """Request bodies: unknown fields are errors, numbers must be finite."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _integer_id(value: object) -> object:
    """An integer id (``{"user_id": 42}``) is the string "42"; anything else is left to the
    string check (a float or a bool is still an error naming the field)."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


#: a user / item / request / event id: a JSON string, or an integer taken as its decimal text
Id = Annotated[str, BeforeValidator(_integer_id)]

ContextValue = str | int | float | bool
PolicyName = Literal["greedy", "ucb", "thompson", "epsilon_greedy"]


class RecommendRequest(Body):
    """``POST /v1/recommend``: top-k for one user."""

    user_id: Id = Field(min_length=1, max_length=512, description="Known or new user id.")
    k: int = Field(10, ge=1, description="Items to return (at most the service's max k).")
    policy: PolicyName = Field("greedy", description="How the k items are picked.")
    beta: float | None = Field(None, ge=0, description="UCB's weight on the std (ucb only).")
    epsilon: float | None = Field(
        None, ge=0, le=1, description="Exploration rate (epsilon_greedy only)."
    )
    context: dict[str, ContextValue] | None = Field(
        None, description="Context column -> value, applied to every candidate."
    )
    exclude: list[Id] = Field(
        default_factory=list, description="Item ids never to return (unknown ids are ignored)."
    )
    exclude_seen: bool = Field(True, description="Drop items the user had in training.")
    confidence_level: float = Field(0.9, gt=0, lt=1, description="Level of [low, high].")


class RecommendedItem(BaseModel):
    """One item of a slate; numbers are null where undefined (e.g. std of a point model)."""

    item_id: str
    rank: int
    score: float | None = Field(description="What the policy ranked by (UCB: mean + beta std).")
    mean: float | None
    std: float | None
    low: float | None
    high: float | None
    confidence: float | None
    propensity: float | None = Field(description="P(this choice | earlier positions).")


class RecommendResponse(BaseModel):
    """The slate, its request id (to send with feedback) and where it came from."""

    request_id: str
    model_version: str
    arm: str
    policy: str
    cold_start: bool
    items: list[RecommendedItem]


class ScoreRequest(Body):
    """``POST /v1/score``: predictions for given items of one user."""

    user_id: Id = Field(min_length=1, max_length=512)
    item_ids: list[Id] = Field(min_length=1, description="Items of the catalogue to score.")
    context: dict[str, ContextValue] | None = None
    confidence_level: float = Field(0.9, gt=0, lt=1)


class ScoredItem(BaseModel):
    """Mean, std and interval of one (user, item) pair; null where undefined."""

    item_id: str
    mean: float | None
    std: float | None
    low: float | None
    high: float | None
    confidence: float | None


class ScoreResponse(BaseModel):
    """The predictions, in the order of ``item_ids``."""

    model_version: str
    cold_start: bool
    items: list[ScoredItem]


class FeedbackItem(Body):
    """One outcome of a served item: exactly one of ``click`` and ``rating``."""

    event_id: Id = Field(min_length=1, max_length=512, description="Idempotency key.")
    request_id: Id = Field(min_length=1, max_length=512)
    item_id: Id = Field(min_length=1, max_length=512)
    click: Literal[0, 1] | None = None
    rating: float | None = None

    @model_validator(mode="after")
    def _one_outcome(self) -> FeedbackItem:
        if (self.click is None) == (self.rating is None):
            has = "both click and rating" if self.click is not None else "neither"
            raise ValueError(f"give exactly one of click (0 or 1) or rating; this event has {has}")
        return self


class FeedbackRequest(Body):
    """``POST /v1/feedback``: a batch of events (the whole batch is one transaction)."""

    events: list[FeedbackItem] = Field(min_length=1)


class FeedbackResponse(BaseModel):
    """Events newly stored and event ids already stored (retries)."""

    stored: int
    duplicates: int


class ModelsResponse(BaseModel):
    """The registry's versions (oldest first) and the active one."""

    active: str
    versions: list[str]


class ActivateResponse(BaseModel):
    """The version now served and the one it replaced."""

    active: str
    previous: str

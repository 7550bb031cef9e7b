"""Base of every strategy's parameter model (pydantic): unknown keys are errors."""

from pydantic import BaseModel, ConfigDict


class StrategyParams(BaseModel):
    """Parameters of a strategy, validated from its config section (minus ``name``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

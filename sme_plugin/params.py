"""Base of every strategy's parameter model (pydantic): unknown keys are errors, numbers are finite.

Every float parameter must be finite (NaN and infinities are refused) and every number at most
:data:`MAX_MAGNITUDE` in size: no physical setting of a crossbar simulation needs more, and larger
values only overflow somewhere downstream.
"""

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

#: the largest magnitude a numeric parameter may have.
MAX_MAGNITUDE = 1e12


class StrategyParams(BaseModel):
    """Parameters of a strategy, validated from its config section (minus ``name``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _bounded_numbers(cls, value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) > MAX_MAGNITUDE:
            raise ValueError(f"{value!r:.40} is too large (at most {MAX_MAGNITUDE:g} in magnitude)")
        return value

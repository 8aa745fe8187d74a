"""Configuration of the physics-informed terms (names after the physics, units stated)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class PhysicsConfig(BaseModel):
    """Weights and switches of PITC/PISC. Weights multiply losses measured in ``weight_energy_unit``."""

    model_config = ConfigDict(extra="forbid")

    taylor_weight: float = Field(0.0, ge=0, description="λ_PITC; 1.2 in the paper (kcal/mol)")
    spatial_weight: float = Field(0.0, ge=0, description="λ_PISC; 0.01 in the paper (kcal/mol)")
    perturbation_scale: float = Field(0.05, gt=0, description="δ, Å")
    weight_energy_unit: str = Field(
        "kcal/mol", description="energy unit in which the physics losses are measured"
    )
    second_order: bool = False
    anchor_to_labels: bool = False
    two_point: bool = False
    local_fraction: float = Field(1.0, gt=0, le=1)
    seed: int = 0

    @property
    def enabled(self) -> bool:
        return self.taylor_weight > 0 or self.spatial_weight > 0

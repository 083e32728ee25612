"""The data plane: gateway, tier deployments (vLLM on Ray Serve), caches, guardrails,
telemetry emission, and the reference fleet. Heavy imports (ray, vllm, torch) stay inside
the functions that start engines."""

from contracts.manifest import FleetManifest, load_fleet, save_fleet, verify_files

__all__ = ["FleetManifest", "load_fleet", "save_fleet", "verify_files"]

"""Typed models of kubenova's custom resources (group ``compute.kubenova.io``).

The CRDs under ``deploy/crds/`` are generated from these models by ``kubenova crds``.
"""

from kubenova_api.constants import API_VERSION, GROUP, VERSION

__all__ = ["API_VERSION", "GROUP", "VERSION"]

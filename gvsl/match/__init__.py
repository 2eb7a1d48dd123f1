"""Matching two scans with a GVSL network: correspondences in physical space (LPS mm), warping, label propagation."""
from gvsl.match.config import MatchConfig
from gvsl.match.grid import NetworkInput, prepare_network_inputs
from gvsl.match.physical import PhysicalTransforms, network_to_physical
from gvsl.match.result import MatchResult
from gvsl.match.volumes import match_volumes

__all__ = ["MatchConfig", "MatchResult", "NetworkInput", "PhysicalTransforms", "match_volumes", "network_to_physical",
           "prepare_network_inputs"]

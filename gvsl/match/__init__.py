"""Matching two scans with a GVSL network: correspondences in physical space (LPS mm), warping, label propagation."""
from gvsl.match.config import MatchConfig
from gvsl.match.files import FileMatch, match_files
from gvsl.match.frame import NetworkInputs, prepare_network_inputs
from gvsl.match.options import MatchOptions
from gvsl.match.outputs import write_outputs
from gvsl.match.physical import PhysicalTransforms, network_to_physical
from gvsl.match.refine import RefineConfig
from gvsl.match.result import MatchResult
from gvsl.match.volumes import match_volumes

__all__ = ["FileMatch", "MatchConfig", "MatchOptions", "MatchResult", "NetworkInputs", "PhysicalTransforms",
           "RefineConfig", "match_files", "match_volumes", "network_to_physical", "prepare_network_inputs",
           "write_outputs"]

"""Model-agnostic test infrastructure: devices, meshes, comparison and testers."""

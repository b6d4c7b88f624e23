"""Plan -> deploy files: pure `render_x(plan) -> str` functions, one module per kind of file."""

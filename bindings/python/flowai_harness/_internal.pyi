"""Type stub of the private native module (what exists in this build)."""

def describe_toolkit_tools(toolkit_json: str, agent_json: str) -> str:
    """JSON list of ``{name, description, input_schema}`` for one toolkit on one agent."""

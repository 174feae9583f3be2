"""Type stub of the private native module (what exists in this build)."""

__all__ = ["describe_role_default_tools", "describe_toolkit_tools"]

def describe_toolkit_tools(toolkit_json: str, agent_json: str) -> str:
    """JSON list of ``{name, description, input_schema}``: one toolkit's tools for one agent."""

def describe_role_default_tools(agent_json: str) -> str:
    """JSON list of ``{name, description, input_schema}``: the agent's role-default built-ins."""

"""From a stored inbound message to an agent's reply: agent selection and the agents themselves."""

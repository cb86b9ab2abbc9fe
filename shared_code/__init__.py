"""Domain and adapters of the WhatsApp bridge. Never imports ``azure.functions``."""

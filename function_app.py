"""Azure Functions entry point: wires each trigger folder's Blueprint into one app."""

import azure.functions as func

from maintenance_function import bp as maintenance_bp
from management_function import bp as management_bp
from processor_function import bp as processor_bp
from sender_function import bp as sender_bp
from shared_code.log_privacy import install_log_record_factory
from webhook_function import bp as webhook_bp

# Tracebacks in logs keep frames and exception types, not messages that may quote a user's text.
install_log_record_factory()

app = func.FunctionApp()

app.register_functions(webhook_bp)
app.register_functions(processor_bp)
app.register_functions(sender_bp)
app.register_functions(maintenance_bp)
app.register_functions(management_bp)

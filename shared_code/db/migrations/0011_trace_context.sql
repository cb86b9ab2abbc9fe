-- Telemetry (issue 14): the W3C traceparent of the trace that wrote an outbound message, so the
-- delivery statuses Meta posts later join that trace (Meta does not send our context back).
-- NULL when telemetry is off or the row was written outside a trace.
ALTER TABLE whatsapp_messages ADD COLUMN trace_context text;

-- One row per session that reached the first funnel step.
{{ funnel_sessions(ref('int_events_as_of')) }}

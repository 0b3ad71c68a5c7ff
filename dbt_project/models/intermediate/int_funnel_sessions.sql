-- One row per session that reached the first funnel step.
{{ funnel_instances(ref('int_events_as_of'), 'session_id') }}

-- One row per user and day on which the user reached the first funnel step.
{{ funnel_instances(ref('int_events_as_of'), "stitched_user_id || '|' || occurred_at::date::varchar") }}

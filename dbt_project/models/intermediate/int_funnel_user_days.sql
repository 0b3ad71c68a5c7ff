-- One row per user and day on which the user reached the first funnel step.
{{ funnel_user_days(ref('int_events_as_of')) }}

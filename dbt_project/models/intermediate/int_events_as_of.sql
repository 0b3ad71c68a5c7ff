-- Events strictly before the as-of instant, stitched with the identities known by then:
-- a visitor who logs in after the as-of instant is still anonymous here.
{{ events_as_of() }}

"""`streamdet web`: a page for a station, served by one more subscriber of the bus (the `web`
extra). `state` keeps what the page shows, bounded; `clips` reads the clips folder safely;
`server` is the aiohttp application; `static/` the page itself (plain HTML, CSS and JS)."""

"""How the HTTP servers of this system keep connections (sites, the front), in one place."""

# Idle keep-alive connections are kept longer than clients leave them idle (declarants think up to ~20 s; pools
# such as aiohttp's keep them 15 s): a server that closes first races the client's next request on that connection,
# which the client sees as a broken connection (uvicorn's default is 5 s; load balancers commonly use 60-75 s).
KEEP_ALIVE_S = 75

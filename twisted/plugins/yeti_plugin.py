from twisted.application.service import ServiceMaker

yeti = ServiceMaker(
    "Yeti", "yeti.tap", "GraphQL-defined live tables over REST, SSE and WebSocket.", "yeti"
)

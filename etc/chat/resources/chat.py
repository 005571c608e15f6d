"""
Custom resources of the chat example.

- ``ChatRoom`` extends the ``ChatMessage`` table: WebSocket messages of the
  form ``{"type": "typing", "user": "ann"}`` are published to everyone on the
  table's topic and never stored; any other message is stored as usual (and
  so broadcast as an ``Update``).
- ``Rooms`` is a resource of its own at ``/chat/Rooms``: the rooms seen so
  far, with their message counts.
"""

from yeti.resources import Request, Resource, TableResource


class ChatRoom(TableResource):
    table = "ChatMessage"

    async def on_message(self, conn, message):
        if message.get("type") == "typing":
            user = message.get("user")
            if not isinstance(user, str):
                conn.send_error("a typing message needs a 'user' string")
                return
            self.app.pubsub.notify_publish("ChatMessage", {"typing": user})
            return
        await super().on_message(conn, message)


class Rooms(Resource):
    async def get(self, request: Request):
        from yeti.fiql import Query

        messages = await self.app.table("ChatMessage").query(Query())
        counts: dict[str, int] = {}
        for message in messages:
            counts[message["room"]] = counts.get(message["room"], 0) + 1
        return [{"room": room, "messages": n} for room, n in sorted(counts.items())]

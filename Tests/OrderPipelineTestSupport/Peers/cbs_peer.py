"""A scripted AMQP 1.0 peer that speaks Azure's claims-based security just enough for a test.

Listens on 127.0.0.1:PORT (SASL ANONYMOUS), answers put-token requests on `$cbs` with STATUS (default 202)
after checking the SAS token's signature with KEY, accepts every message sent to any other address, and
writes one JSON line per event to OUT. Touches READY once it listens. Runs until killed. With REJECTS and
CONDITION, the first REJECTS messages are rejected with that AMQP error condition (`com.microsoft:server-busy`,
`amqp:link:message-size-exceeded`, …) before any is accepted, as Azure Service Bus refuses a send.

usage: cbs_peer.py PORT KEY OUT READY [STATUS [REJECTS CONDITION]]
"""
import base64, hashlib, hmac, json, sys, urllib.parse

from proton import Condition, Message
from proton.handlers import MessagingHandler
from proton.reactor import Container

port, key, out_path, ready_path = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
status = int(sys.argv[5]) if len(sys.argv) > 5 else 202
rejects = int(sys.argv[6]) if len(sys.argv) > 6 else 0
condition = sys.argv[7] if len(sys.argv) > 7 else "amqp:internal-error"
out = open(out_path, "a", buffering=1)


def record(**fields):
    out.write(json.dumps(fields) + "\n")


def verify(token):
    # SharedAccessSignature sr=..&sig=..&se=..&skn=..
    fields = dict(part.split("=", 1) for part in token[len("SharedAccessSignature "):].split("&"))
    to_sign = fields["sr"] + "\n" + fields["se"]
    expected = base64.b64encode(hmac.new(key.encode(), to_sign.encode(), hashlib.sha256).digest()).decode()
    return urllib.parse.unquote(fields["sig"]) == expected, urllib.parse.unquote(fields["sr"]), fields["skn"], int(fields["se"])


class Peer(MessagingHandler):
    def __init__(self):
        super().__init__(auto_accept=False)
        self.reply_links = {}
        self.rejected = 0

    def on_start(self, event):
        event.container.listen("127.0.0.1:%s" % port)
        open(ready_path, "w").close()

    def on_link_opening(self, event):
        link = event.link
        if link.is_sender:
            link.source.address = link.remote_source.address
            if link.remote_source.address == "$cbs":
                self.reply_links[link.remote_target.address] = link
        else:
            link.target.address = link.remote_target.address
        record(event="attach", role="sender" if link.is_sender else "receiver",
               source=link.remote_source.address, target=link.remote_target.address)

    def on_message(self, event):
        message = event.message
        target = event.link.remote_target.address
        if target == "$cbs":
            props = message.properties or {}
            ok, resource, skn, expiry = verify(message.body)
            record(event="put-token", operation=props.get("operation"), type=props.get("type"), name=props.get("name"),
                   signature_ok=ok, resource=resource, skn=skn, expiry=expiry, reply_to=message.reply_to)
            self.accept(event.delivery)
            reply = Message(correlation_id=message.id,
                            properties={"status-code": status, "status-description": "Accepted" if status < 300 else "Unauthorized"})
            self.reply_links[message.reply_to].send(reply)
        elif self.rejected < rejects:
            self.rejected += 1
            record(event="rejected", target=target, message_id=message.id, condition=condition)
            event.delivery.local.condition = Condition(condition, "scripted refusal %d of %d" % (self.rejected, rejects))
            self.reject(event.delivery)
        else:
            record(event="message", target=target, message_id=message.id, subject=message.subject,
                   content_type=message.content_type)
            self.accept(event.delivery)


Container(Peer()).run()

-- Replies are found by the message they answer: an answer to an information request, progress
-- reports on an action assignment (sent by this agency), and answers that arrived before this
-- agency stored the gateway's acknowledgement of its own message (received by this agency).

CREATE INDEX sent_messages_by_reply ON sent_messages (in_reply_to, form_kind);
CREATE INDEX received_messages_by_reply ON received_messages (in_reply_to, form_kind);

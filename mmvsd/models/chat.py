"""The LLaVA-1.5 conversation format, written once, as llava-hf's checkpoints render it:

    USER: <image>\\n{question} ASSISTANT: {answer}</s>USER: {question} ASSISTANT: {answer}</s>...

Requests are formatted by the processor's own chat template where it has one (`CHAT_TEMPLATE` is
that template for the targets built here); training conversations are tokenized turn by turn
(`mmvsd.data.conversations`) from `user_turn`, so both agree token for token (a test checks it).
"""

IMAGE_PLACEHOLDER = "<image>"


def user_turn(question: str, image: bool) -> str:
    """A user turn and the assistant cue, with the image placeholder when the turn carries the image."""
    return f"USER: {IMAGE_PLACEHOLDER}\n{question} ASSISTANT:" if image else f"USER: {question} ASSISTANT:"


# user_turn as a Jinja chat template (the processor's `apply_chat_template`), for tiny-random and the toy targets
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'].upper() + ': ' }}"
    "{% for part in message['content'] if part['type'] == 'image' %}{{ '" + IMAGE_PLACEHOLDER + "\n' }}{% endfor %}"
    "{% for part in message['content'] if part['type'] == 'text' %}{{ part['text'] }}{% endfor %}"
    "{% if message['role'] == 'user' %}{{ ' ' }}{% else %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

"""Attribution: which conversation and offer led to a purchase made outside the chat."""

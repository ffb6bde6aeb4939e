"""What chatledger tells cardholders in chat: fraud alerts on their card transactions and,
when they ask, their balances. Both read partner data only through commerce.partnerdata."""

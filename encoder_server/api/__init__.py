"""What callers speak: the gRPC servicer and interceptors, HTTP `/predict` and its connection guard, status codes."""

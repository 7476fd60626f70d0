"""Email-marketing providers behind one interface."""
